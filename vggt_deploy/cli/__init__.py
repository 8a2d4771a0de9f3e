"""The `vggt-deploy` command line (entry point: `vggt_deploy.cli:main`)."""

from vggt_deploy.cli import (  # noqa: F401  (each module registers its commands)
    bench_cmds,
    build_cmds,
    build_ov_cmd,
    build_trt_cmd,
    compare_cmd,
    qat_cmd,
    data_cmds,
    export_cmds,
    model_cmds,
    publish_cmd,
    sensitivity_cmds,
    vggt1b_cmds,
)
from vggt_deploy.cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
