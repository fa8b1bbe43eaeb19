"""What the trainer and the server share; imports nothing else of this project.

Entry points: ``settings.Settings`` (every ``CCD_*`` variable), ``events.InteractionEvent`` (the
event schema), ``event_log.open_event_log`` / ``open_consumer`` (Kafka or SQLite) and
``model_store.open_model_store`` with ``ModelSnapshot`` (Redis or files, the published format).
"""
