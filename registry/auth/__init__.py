"""Request authentication and authorisation: AWS SigV4 verification, registry tokens, principals and access
control (the policies it evaluates are parsed and evaluated by the pure `registry.iam_policy`)."""
