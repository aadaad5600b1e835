"""Running things headlessly: `batch` (`cliper segment | demo` over images); `plans`, `papermill`,
`execute` and `records` (`cliper reproduce`: notebooks executed by a run plan, and what each run
left behind); `run_links` (portable paths in those records); and `notebook`, the runtime every
notebook imports."""
