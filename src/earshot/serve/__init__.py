"""`earshot serve`: the REST API and web page (FastAPI + uvicorn). No torch is imported here."""

from __future__ import annotations

from earshot.serve.settings import Settings


def create_app(settings: Settings | None = None):
    """The FastAPI app (see `earshot.serve.app.create_app`)."""
    from earshot.serve.app import create_app as _create

    return _create(settings)


def run(model: str = "mn04-as", host: str = "127.0.0.1", port: int = 8000, **settings) -> None:
    """Serve `model` (registry name or bundle path) on host:port; other `Settings` by keyword or EARSHOT_*."""
    import uvicorn

    log_level = settings.pop("log_level", "info")
    app = create_app(Settings.from_env(model=model, **settings))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["Settings", "create_app", "run"]
