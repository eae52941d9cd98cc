"""Application-level encryption of PHI: envelope keys and AES-256-GCM fields."""
