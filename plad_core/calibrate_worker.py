# shim: removed after the layout merge
from plad_core.training.torchrun import STATS, main, run  # noqa: F401

if __name__ == "__main__":
    main()
