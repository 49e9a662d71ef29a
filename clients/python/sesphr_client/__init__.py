"""SeSPHR Python client: the crypto of docs/crypto.md and the mesh flows over mTLS.

`sesphr_client.crypto` needs only `cryptography` and `ecdsa`;
`sesphr_client.client` also needs `grpcio` and the stubs that
`gen_stubs.py` generates into `gen/`.
"""
