"""The consortium's keys: a CA, the SuperLink's TLS certificate and each site's authentication key pair.

One call makes every file a deployment needs, laid out by where it goes::

    OUT/ca/ca.key                 the CA's private key: keep it offline
    OUT/ca/ca.crt                 the CA certificate
    OUT/server/server.key         the SuperLink's TLS key        } copy OUT/server/
    OUT/server/server.pem         its certificate, signed by CA  } to the server host
    OUT/server/ca.crt
    OUT/server/site-keys/A.pub    site A's public key, registered with the SuperLink
    OUT/sites/A/auth.key          site A's private key            } copy OUT/sites/A/
    OUT/sites/A/auth.pub                                          } to hospital A
    OUT/sites/A/ca.crt            what site A trusts the SuperLink by

Flower's SuperNode authentication takes NIST P-384 keys in OpenSSH format (the same
as ``ssh-keygen -t ecdsa -b 384``). A public key's comment names its site
(``fesf-site:A``), so a client started with another site's key is told so before it
connects. Running it again keeps every existing file and adds what is missing, so
new sites join without reissuing anyone's keys; a ``site-keys/<site>.pub`` that a site
made itself (and sent in) is kept.
"""

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fesf_fed.atomic import atomic_writer
from fesf_fed.errors import ConfigError

#: Site names become file names and Flower node-config values.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A DNS name, for the server certificate's subject alternative names.
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_CURVE = ec.SECP384R1()
#: The public key's comment that names its site.
_SITE_COMMENT = "fesf-site:"


@dataclass(frozen=True)
class ConsortiumKeys:
    """Where :func:`make_consortium_keys` put things."""

    root: Path

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def server_folder(self) -> Path:
        return self.root / "server"

    @property
    def site_keys(self) -> Path:
        """The public keys the server registers, one ``<site>.pub`` each."""
        return self.server_folder / "site-keys"

    def site_folder(self, site: str) -> Path:
        return self.root / "sites" / site


def check_site_name(site: str) -> str:
    """Return ``site`` if it can name a site, else raise :class:`ConfigError`."""
    if not SITE_NAME.fullmatch(site):
        raise ConfigError(f"site {site!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return site


def _subject_alternative_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _DNS_NAME.fullmatch(host):
                raise ConfigError(f"server host {host!r}: not a DNS name or IP address") from None
            names.append(x509.DNSName(host))
    return names


def _write(path: Path, data: bytes) -> None:
    with atomic_writer(path) as stream:
        stream.write(data)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FESF-Fed"), x509.NameAttribute(NameOID.COMMON_NAME, subject)]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA384())


def _make_ca(folder: Path, days: int) -> ec.EllipticCurvePrivateKey:
    key_path, certificate_path = folder / "ca.key", folder / "ca.crt"
    key = ec.generate_private_key(_CURVE)
    certificate = _certificate(
        "FESF-Fed consortium CA",
        key.public_key(),
        None,
        key,
        days=days,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    _write(key_path, _private_pem(key))
    _write(certificate_path, certificate.public_bytes(serialization.Encoding.PEM))
    return key


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    # Only issuing the server certificate needs the CA's key; it may stay offline otherwise.
    if not path.exists():
        raise ConfigError(
            f"{path}: missing, and the server certificate must be signed with it; restore it from its offline copy"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an EC private key; restore the CA key that fesf-server certs made")
    return key


def _make_server_certificate(
    folder: Path, hosts: list[str], ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, days: int
) -> None:
    key = ec.generate_private_key(_CURVE)
    certificate = _certificate(
        hosts[0],
        key.public_key(),
        ca.subject,
        ca_key,
        days=days,
        extensions=[
            (x509.SubjectAlternativeName(_subject_alternative_names(hosts)), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        ],
    )
    _write(folder / "server.key", _private_pem(key))
    _write(folder / "server.pem", certificate.public_bytes(serialization.Encoding.PEM))


def _make_site_key_pair(folder: Path, site: str) -> bytes:
    key = ec.generate_private_key(_CURVE)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public += f" {_SITE_COMMENT}{site}\n".encode()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write(folder / "auth.key", private)
    _write(folder / "auth.pub", public)
    return public


def key_site(public_key: Path) -> str | None:
    """The site a public key was made for, from its ``fesf-site:`` comment; None if it names none."""
    fields = public_key.read_text(errors="replace").split()
    for comment in fields[2:]:
        if comment.startswith(_SITE_COMMENT):
            return comment[len(_SITE_COMMENT) :]
    return None


def server_hosts(certificate: Path) -> list[str]:
    """The DNS names and IP addresses a server certificate is valid for."""
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(value) for value in names.get_values_for_type(x509.DNSName) + names.get_values_for_type(x509.IPAddress)]


def make_consortium_keys(root: Path, hosts: list[str], sites: list[str], *, days: int = 825) -> ConsortiumKeys:
    """Make (or complete) the consortium's CA, server certificate and site key pairs under ``root``.

    Parameters
    ----------
    root : Path
        Output folder; see the module docstring for its layout.
    hosts : list of str
        The names and addresses sites use to reach the SuperLink (``link.example.org``,
        ``10.0.0.5``); every one goes into the certificate's subject alternative names.
    sites : list of str
        Site names; each gets a key pair unless it has one already.
    days : int
        Validity of new certificates (825 days is the longest most TLS clients accept).

    Returns
    -------
    ConsortiumKeys
        The paths of what was made.
    """
    if not hosts:
        raise ConfigError("hosts: name at least one host name or IP address the sites will connect to")
    if days < 1:
        raise ConfigError(f"days: must be >= 1, got {days}")
    for site in sites:
        check_site_name(site)
    _subject_alternative_names(hosts)  # refuse a bad host before writing anything
    keys = ConsortiumKeys(root)
    ca_key_path = root / "ca" / "ca.key"
    ca_key = None
    if not ca_key_path.exists() and not keys.ca_certificate.exists():
        ca_key = _make_ca(root / "ca", days)
    elif not keys.ca_certificate.exists():
        raise ConfigError(
            f"{keys.ca_certificate}: missing; restore it (every site trusts this CA) or start a new folder"
        )
    ca = x509.load_pem_x509_certificate(keys.ca_certificate.read_bytes())
    server = keys.server_folder
    if (server / "server.pem").exists():
        issued_for = server_hosts(server / "server.pem")
        if missing := [host for host in hosts if host not in issued_for]:
            raise ConfigError(
                f"{server / 'server.pem'}: issued for {', '.join(issued_for)}, not {', '.join(missing)}; "
                "delete server.pem and server.key to reissue it"
            )
    else:
        _make_server_certificate(server, hosts, ca_key or _load_ca_key(ca_key_path), ca, days)
    ca_pem = keys.ca_certificate.read_bytes()
    _write(server / "ca.crt", ca_pem)
    for site in sites:
        folder = keys.site_folder(site)
        registered = keys.site_keys / f"{site}.pub"
        if (folder / "auth.key").exists():
            _write(registered, (folder / "auth.pub").read_bytes())
        elif not registered.exists():  # a site that made its own key sent only its .pub: keep it
            _write(registered, _make_site_key_pair(folder, site))
        _write(folder / "ca.crt", ca_pem)
    return keys
