"""The dashboard's pages: every module here contributes `routes()` (see cloud_selector.dashboard)."""
