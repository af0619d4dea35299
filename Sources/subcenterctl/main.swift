print("subcenterctl: not yet")
