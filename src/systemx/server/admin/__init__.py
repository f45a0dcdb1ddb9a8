"""The admin listener (``systemx.server.admin.app``) and what it may read (``.source``)."""
