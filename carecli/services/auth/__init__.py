"""Authentication: sign-in (OIDC or the local demo picker), sessions, API tokens, the current actor."""
