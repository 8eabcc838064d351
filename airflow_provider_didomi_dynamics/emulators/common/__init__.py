"""What both emulators share: the HTTPS server, TLS material, fault injection and the admin route table."""
