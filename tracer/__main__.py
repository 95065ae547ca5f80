from . import guard_cli_start

guard_cli_start()

from .cli import main  # noqa: E402

main()
