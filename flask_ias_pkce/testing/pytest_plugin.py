"""pytest fixtures for testing apps that use flask-ias-pkce."""
