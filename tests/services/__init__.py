"""Services a test session starts for itself (a throwaway PostgreSQL cluster), as session-scoped fixtures that
any suite may import into its conftest."""
