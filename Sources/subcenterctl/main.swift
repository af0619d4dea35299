import Glibc

exit(Ctl.run())
