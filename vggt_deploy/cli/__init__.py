"""The `vggt-deploy` command line (entry point: `vggt_deploy.cli:main`)."""

from vggt_deploy.cli import bench_cmds, build_cmds, data_cmds, export_cmds, model_cmds  # noqa: F401  (each module registers its commands)
from vggt_deploy.cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
