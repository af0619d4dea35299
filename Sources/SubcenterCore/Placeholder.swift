// Placeholder: this module arrives with a later issue.
