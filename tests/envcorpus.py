"""Tricky .env files (as bytes, so CRLF and BOMs survive git) shared by the tests and the benchmark."""

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAq7BFUpkGp3+XQHQd\n"
    "1Tn0nq0uV8S3m3R5i8xXyZbq3q1p0Y9s8f0dQ2nQ==\n"
    "-----END PRIVATE KEY-----"
)

CORPUS: dict[str, bytes] = {
    "plain": b"DB_HOST=db\nDB_PORT=5432\nEMPTY=\n",
    "export": b"export API_KEY=abc123\nexport  SPACED=x y\n",
    "quotes": (
        b"SINGLE='raw \\n $HOME'\n"
        b"DOUBLE=\"line1\\nline2 \\\"q\\\" \\t tab\"\n"
        b"SQ_ESC='a\\'b'\n"
        b"MIXED=\"has 'single' inside\"\n"
    ),
    "pem": ("TLS_KEY=\"" + PEM + "\"\nAFTER=1\n").encode(),
    "pem_single": ("TLS_KEY='" + PEM + "'\n").encode(),
    "crlf": b"A=1\r\nB=\"two words\"\r\n# comment\r\nC=3\r\n",
    # A PEM key saved on Windows: python-dotenv reads files in text mode, so the value has LF.
    "crlf_multiline": ("TLS_KEY=\"" + PEM.replace("\n", "\r\n") + "\"\r\nSINGLE='a\r\nb'\r\nAFTER=1\r\n").encode(),
    "cr_only": ("A=1\rTLS_KEY=\"" + PEM.replace("\n", "\r") + "\"\rB='x\ry'\r").encode(),
    "bom": "\ufeffFIRST=with-bom\nSECOND=ok\n".encode("utf-8"),
    "comments": (
        b"# a comment line\n"
        b"HASH_IN=abc#def\n"
        b"HASH_AFTER=abc # trailing comment\n"
        b"HASH_QUOTED=\"abc # not a comment\"\n"
        b"EMPTY_COMMENT= # only a comment\n"
        b"   \n"
        b"INDENTED=  padded  \n"
    ),
    "equals": b"URL=postgres://u:p@h/db?sslmode=require&x=1\nB64=YWJj==\nJWT=a.b.c=\n",
    "empty": b"E1=\nE2=''\nE3=\"\"\n",
    "literal_vars": b"BASE=/srv\nUSES=${BASE}/app\nDEFAULTED=${MISSING:-fallback}\nDOLLAR=$HOME\n",
    "unicode": "GREETING=grüße 🐍\nJP='日本語'\n".encode(),
    "duplicates": b"KEY=first\nOTHER=x\nKEY=second\n",
}
