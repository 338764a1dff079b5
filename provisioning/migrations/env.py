"""Alembic environment. `provisioning.db.upgrade` passes an open connection in
``config.attributes["connection"]``; the ``sqlalchemy.url`` path is for the alembic CLI."""
from alembic import context

from provisioning.db import Base, make_engine

import cti.calls  # noqa: F401  (registers the tables on Base.metadata for autogenerate)

config = context.config


def _configure(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite cannot ALTER much
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _configure(config.attributes["connection"])
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _configure(conn)
    engine.dispose()
