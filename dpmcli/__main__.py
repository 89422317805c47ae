"""``python -m dpmcli``."""

from .cli.main import main

main()
