import Glibc

exit(InteropServer.run())
