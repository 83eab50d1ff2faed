"""`dbrx worker converter|builder`: lease and run jobs from the job store."""

from .not_built import not_built_yet


def add_parser(subparsers):
    p = subparsers.add_parser("worker", help="run convert or build jobs from the job store")
    p.add_argument("stage", choices=["converter", "builder"])
    p.add_argument("--database_url", default=None, help="default: $DBRX_DATABASE_URL or the embedded SQLite file")
    p.set_defaults(func=not_built_yet("issues 5 and 6"))
    return p
