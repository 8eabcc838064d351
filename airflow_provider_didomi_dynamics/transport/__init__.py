"""HTTP plumbing both hooks share: the retry policy and 429 gate, pinned-TLS sessions, reading an API's answer."""
