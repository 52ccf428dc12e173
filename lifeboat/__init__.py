"""Lifeboat: disaster-recovery runbooks for WordPress on Patroni/PostgreSQL."""
