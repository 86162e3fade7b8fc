"""One module per noun; each registers its commands on the app in `nepactl.app`."""
