"""One router per resource; each ``build_router`` is called by ``service.app.create_app``."""
