"""``python -m revise.cli``: the entry point torchrun starts in each worker."""

from revise.cli import main

main()
