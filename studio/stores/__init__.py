"""Persistent state: TinyDB files written atomically, each behind one lock."""
