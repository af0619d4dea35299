import Glibc

exit(Daemon.run())
