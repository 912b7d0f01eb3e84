"""OpenAI-compatible HTTP server (installed as phi4mm.server): `create_app(ServerSettings(...))`."""


def __getattr__(name: str):
    if name == "create_app":  # lazy: the CLI reads server.settings without importing starlette
        from phi4mm.server.app import create_app

        return create_app
    raise AttributeError(name)
