from app.db.session import Database

__all__ = ["Database"]
