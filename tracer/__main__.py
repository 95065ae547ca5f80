from . import _guard_cli_start

_guard_cli_start()

from .cli import main  # noqa: E402

main()
