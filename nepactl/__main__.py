"""`python -m nepactl` = `nepactl`."""

from nepactl.app import main

main()
