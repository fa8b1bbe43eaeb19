"""The FastAPI server (``ccd serve``): ``app.create_app`` and one router per resource."""
