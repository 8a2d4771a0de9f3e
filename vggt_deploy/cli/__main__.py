"""`python -m vggt_deploy.cli ...`: the same command line as the installed `vggt-deploy` script."""

from vggt_deploy.cli import main

if __name__ == "__main__":
    main(prog_name="vggt-deploy")
