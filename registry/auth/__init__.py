"""Request authentication and authorisation: AWS SigV4 verification and IAM-style policy evaluation (pure)."""
