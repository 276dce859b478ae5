# An absolute import, so this file also serves as the PyInstaller entry script.
from sidecar.cli import main

main()
