"""The command line: `arguments` holds every argument parser of the package, `commands` the `cliper`
commands and `main`. A command that needs torch or the models imports them when it runs, so
`cliper --help` stays fast."""
