#!/usr/bin/env python3
"""A Python client of sscard-kms, for a card vendor's personalisation station.

Run against `sscard-kms dev` (see run.sh beside this file, which does everything):

    python3 examples/python/client.py --data-dir ./kms-data --endpoint 127.0.0.1:50051

What it does, with nothing but PyPI packages (requirements.txt):

1. generates the Python stubs from the repository's proto/ at run time, into a temporary
   directory (grpc_tools.protoc; no generated code is kept);
2. connects over mutual TLS as the demo station GZ-01, with the certificate `dev` wrote to
   <data-dir>/pki/ (station.pem, station.key, and ca.pem to check the server);
3. lists the services by server reflection v1alpha (grpcio-reflection's client) and checks
   that the KMS services are there, and that the CardKeyService the server describes has the
   methods of proto/;
4. calls gRPC health;
5. asks for every key of the demo card as TR-31 key blocks under the station's transport key;
6. unwraps each block with an independent TR-31 implementation (psec.tr31), and checks the
   key's KCV three ways: computed here from the unwrapped key, as returned by the service, and
   as carried in the block's KC optional block; and the key itself against the value derived
   here, independently, from the published test roots (DOMAIN.md §2's dispersion).

It prints a short report and exits 0, or prints one line starting "FAILED:" and exits 1.
It never prints a clear key.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import importlib.resources
import sys
import tempfile
import tomllib
from pathlib import Path

import grpc
import psec.tr31
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf import descriptor_pool

REPO = Path(__file__).resolve().parents[2]

# The demo station GZ-01's transport key (KBPK, AES-128, so TR-31 version D).
# This is a PUBLISHED TEST KEY of `sscard-kms dev` (dev/test-keys.toml, README), public by design,
# which is why it may sit in this file. A real station's KBPK lives in its own security module
# and never in code, on a command line or in a file like this one.
STATION_KBPK = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")

# Demo card 1 of dev (registered and accepted for Guangzhou, template ssc-2.0, 3DES keys).
CARD_IDENTIFIER = "440100D1560000050050640776EF3192"
CARD_NUMBER = "GZ0000012"
SOCIAL_SECURITY_NUMBER = "440103199001011236"
TEMPLATE = "ssc-2.0"
# The ATR examples/inject_card.rs sends; its last 8 bytes are the card factor F3. A card's ATR is
# bound to it at its first key release: a second, different ATR for the same card is refused.
DEFAULT_ATR = "3B6D000080318065B086843202AD932A48"

# DOMAIN.md §2's worked chain: the STK_SSSE key of a card whose ATR ends with this factor.
DOMAIN_F3 = bytes.fromhex("86843202AD932A48")
DOMAIN_STK_SSSE = bytes.fromhex("863CB6B83CB1EFABE9C27E9737E47BD6")
DOMAIN_STK_SSSE_KCV = "32CD7C"

KMS_SERVICES = [
    "sscard.kms.v1.CardKeyService",
    "sscard.kms.v1.PsamService",
    "sscard.kms.v1.RegistryService",
    "sscard.kms.v1.AdminService",
    "grpc.health.v1.Health",
]

RPC_TIMEOUT_S = 15.0


class Failed(Exception):
    """A check failed; the message is the one line the client prints."""


@contextlib.contextmanager
def step(name: str):
    """Names the step in the one line a failed call prints."""
    try:
        yield
    except grpc.RpcError as e:
        raise Failed(f"{name}: {e.code().name}: {e.details()}") from None


# ------------------------------------------------------------------ stubs, generated at run time


def generate_stubs(proto_dir: Path, out_dir: Path):
    """Compiles proto/sscard/kms/v1/*.proto into out_dir and imports the modules."""
    from grpc_tools import protoc

    protos = sorted(p.relative_to(proto_dir).as_posix() for p in proto_dir.glob("sscard/kms/v1/*.proto"))
    if not protos:
        raise Failed(f"no .proto files under {proto_dir}/sscard/kms/v1")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise Failed(f"protoc could not compile {proto_dir} (exit {status}, see above)")
    sys.path.insert(0, str(out_dir))
    types_pb2 = importlib.import_module("sscard.kms.v1.types_pb2")
    kms_pb2 = importlib.import_module("sscard.kms.v1.kms_pb2")
    kms_pb2_grpc = importlib.import_module("sscard.kms.v1.kms_pb2_grpc")
    return types_pb2, kms_pb2, kms_pb2_grpc


# ------------------------------------------------------------------ the channel


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class DefaultDeadline(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Gives every call a deadline, also those made inside libraries (the reflection client sets
    none): a server that does not answer gives DEADLINE_EXCEEDED instead of a hang."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _with_deadline(self, d):
        if d.timeout is not None:
            return d
        return _CallDetails(d.method, self.seconds, d.metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_deadline(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_deadline(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_deadline(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_deadline(details), requests)


def read_pki(pki: Path, name: str) -> bytes:
    try:
        return (pki / name).read_bytes()
    except OSError as e:
        raise Failed(f"cannot read {pki / name}: {e.strerror} (is --data-dir a dev data directory?)")


def station_channel(endpoint: str, data_dir: Path) -> grpc.Channel:
    """Mutual TLS as the demo station: its certificate carries sscard://station/440100/GZ-01,
    which is where the service takes the caller's role and region from."""
    pki = data_dir / "pki"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pki(pki, "ca.pem"),
        private_key=read_pki(pki, "station.key"),
        certificate_chain=read_pki(pki, "station.pem"),
    )
    # The dev server certificate names localhost, 127.0.0.1 and ::1.
    return grpc.intercept_channel(grpc.secure_channel(endpoint, credentials), DefaultDeadline(RPC_TIMEOUT_S))


# ------------------------------------------------------------------ independent cryptography


def tdes_ecb(key: bytes, block: bytes) -> bytes:
    """2-key TDES (K1 K2 K1) ECB encryption of whole 8-byte blocks."""
    if len(key) == 16:
        key = key + key[:8]  # written out as 3-key: cryptography deprecates 16-byte TDES keys
    encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def tdes_kcv(key: bytes) -> bytes:
    """X9.24-1 legacy KCV: TDES of 8 zero bytes (callers keep the first 3)."""
    return tdes_ecb(key, bytes(8))


def aes_cmac_kcv(key: bytes) -> bytes:
    """X9.24-1:2017 annex A KCV of an AES key: AES-CMAC of 16 zero bytes (callers keep 5)."""
    mac = CMAC(algorithms.AES(key))
    mac.update(bytes(16))
    return mac.finalize()


def pboc_dispersion(key: bytes, factor: bytes) -> bytes:
    """DOMAIN.md §2, 3DES cards: D(K, F) = TDES(K, F) || TDES(K, NOT F), no parity adjustment."""
    return tdes_ecb(key, factor) + tdes_ecb(key, bytes(b ^ 0xFF for b in factor))


def expected_card_key(root: bytes, national: bool, region: str, card_factor: bytes) -> bytes:
    """A card key from its published root: national -> province -> city -> card for a national
    root, province -> city -> card for the province's own root (the card master keys)."""
    province_factor = (region[:2] + "0000sh").encode("ascii")  # F1, e.g. "440000sh"
    city_factor = (region + "sx").encode("ascii")  # F2, e.g. "440100sx"
    key = root
    factors = ([province_factor] if national else []) + [city_factor, card_factor]
    for factor in factors:
        key = pboc_dispersion(key, factor)
    return key


# ------------------------------------------------------------------ the steps


def check_reflection(channel, kms_pb2) -> list[str]:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    missing = [s for s in KMS_SERVICES if s not in services]
    if missing:
        raise Failed(f"reflection v1alpha does not list {', '.join(missing)} (it lists {', '.join(services)})")
    # The server's own description of CardKeyService has the methods of the proto/ we compiled.
    try:
        served = descriptor_pool.DescriptorPool(database).FindServiceByName("sscard.kms.v1.CardKeyService")
    except KeyError:
        raise Failed("reflection v1alpha lists CardKeyService but cannot describe it") from None
    ours = kms_pb2.DESCRIPTOR.services_by_name["CardKeyService"]
    if sorted(m.name for m in served.methods) != sorted(m.name for m in ours.methods):
        raise Failed(
            "reflection describes CardKeyService with methods "
            f"{sorted(m.name for m in served.methods)}, proto/ has {sorted(m.name for m in ours.methods)}"
        )
    return services


def check_health(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sscard.kms.v1.CardKeyService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            raise Failed(f"health of {service or 'the server'} is {name}, not SERVING")


def inject(channel, kms_pb2, kms_pb2_grpc, atr: bytes):
    stations = kms_pb2_grpc.CardKeyServiceStub(channel)
    request = kms_pb2.InjectCardKeysRequest(
        card=kms_pb2.CardIdentity(
            card_identifier=CARD_IDENTIFIER,
            card_number=CARD_NUMBER,
            social_security_number=SOCIAL_SECURITY_NUMBER,
            atr=atr,
        ),
        template_id=TEMPLATE,
        delivery=kms_pb2.DELIVERY_FORM_TR31,
        # key_names left empty: every key of the template, in its write order.
    )
    keys = stations.InjectCardKeys(request).keys
    if not keys:
        raise Failed("InjectCardKeys returned no key")
    return keys


def check_key(delivered, types_pb2, roots: dict, card_factor: bytes) -> str:
    """Unwraps one delivered key with psec and checks it; returns its report line."""
    name = delivered.key_name
    if delivered.WhichOneof("form") != "tr31_block":
        raise Failed(f"{name}: delivered as {delivered.WhichOneof('form')}, not as a TR-31 block")
    block = delivered.tr31_block
    try:
        header, key = psec.tr31.unwrap(kbpk=STATION_KBPK, key_block=block)
    except (psec.tr31.KeyBlockError, psec.tr31.HeaderError) as e:
        raise Failed(f"{name}: psec cannot unwrap the TR-31 block under the station key: {e}")
    if header.version_id != "D":
        raise Failed(f"{name}: TR-31 version {header.version_id}, expected D under an AES KBPK")
    if delivered.algorithm != types_pb2.KEY_ALGORITHM_TDES2 or header.algorithm != "T" or len(key) != 16:
        raise Failed(
            f"{name}: algorithm {types_pb2.KeyAlgorithm.Name(delivered.algorithm)}, block algorithm "
            f"{header.algorithm}, {len(key)}-byte key: expected a 16-byte TDES key (ssc-2.0)"
        )

    # KCV, three ways: ours from the unwrapped key, the service's, and the block's KC block.
    kcv = delivered.kcv
    if kcv.method != types_pb2.KCV_METHOD_ENCRYPT_ZEROS or len(kcv.value) < 3:
        raise Failed(f"{name}: KCV {types_pb2.KcvMethod.Name(kcv.method)} of {len(kcv.value)} bytes, "
                     "expected encrypt-zeros of at least 3 bytes for a TDES key")
    ours = tdes_kcv(key)[: len(kcv.value)]
    if ours != kcv.value:
        raise Failed(f"{name}: KCV of the unwrapped key {ours.hex().upper()} != service's {kcv.value.hex().upper()}")
    checks = ["MAC", "KCV"]
    if "KC" in header.blocks:
        # KC data: "00" (legacy, encrypt zeros) + the KCV in hex.
        kc = header.blocks["KC"]
        if kc != "00" + tdes_kcv(key)[: (len(kc) - 2) // 2].hex().upper():
            raise Failed(f"{name}: the block's KC {kc} does not match the unwrapped key")
        checks.append("KC")
    if "KP" in header.blocks:
        # KP data: "01" (CMAC) + the KBPK's KCV: proves which transport key wrapped the block.
        kp = header.blocks["KP"]
        if kp != "01" + aes_cmac_kcv(STATION_KBPK)[: (len(kp) - 2) // 2].hex().upper():
            raise Failed(f"{name}: the block's KP {kp} is not the KCV of the station transport key")
        checks.append("KP")

    # The key itself, against the one derived here from the published roots.
    national = name in roots["national_root"]["tdes"]
    table = roots["national_root" if national else "provincial_root"]["tdes"]
    if name not in table:
        raise Failed(f"{name}: no published test root of that name in dev/test-keys.toml")
    expected = expected_card_key(bytes.fromhex(table[name]), national, CARD_IDENTIFIER[:6], card_factor)
    if key != expected:
        raise Failed(
            f"{name}: the unwrapped key (KCV {tdes_kcv(key)[:3].hex().upper()}) is not the one derived "
            f"from its published root (KCV {tdes_kcv(expected)[:3].hex().upper()})"
        )
    checks.append("derived")
    if name == "STK_SSSE" and card_factor == DOMAIN_F3:
        if key != DOMAIN_STK_SSSE or tdes_kcv(key)[:3].hex().upper() != DOMAIN_STK_SSSE_KCV:
            raise Failed(f"STK_SSSE: not DOMAIN.md §2's worked card key (KCV {DOMAIN_STK_SSSE_KCV})")
        checks.append("DOMAIN.md")

    h = header
    fields = f"{h.version_id} {h.key_usage} {h.algorithm} {h.mode_of_use} v{h.version_num} {h.exportability}"
    return (
        f"  {name:<9} {delivered.directory:<5} {fields:<14} KCV {kcv.value.hex().upper():<6} "
        f"ok: {', '.join(checks)}"
    )


def run(args) -> None:
    try:
        atr = bytes.fromhex(args.atr)
    except ValueError:
        raise Failed(f"--atr {args.atr!r} is not hex")
    if len(atr) < 8:
        raise Failed("--atr must have at least 8 bytes (its last 8 are the card factor)")
    card_factor = atr[-8:]
    try:
        roots = tomllib.loads(args.test_keys.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Failed(f"cannot read the published test keys {args.test_keys}: {e}")
    if bytes.fromhex(roots["station"]["transport_aes"]) != STATION_KBPK:
        raise Failed(f"{args.test_keys} has another station transport key than this client")

    with tempfile.TemporaryDirectory(prefix="sscard-stubs-") as out:
        types_pb2, kms_pb2, kms_pb2_grpc = generate_stubs(args.proto_dir, Path(out))
    print(f"stubs        generated from {args.proto_dir} with grpc_tools.protoc")

    channel = station_channel(args.endpoint, args.data_dir)
    with channel:
        with step(f"server reflection v1alpha at {args.endpoint}"):
            services = check_reflection(channel, kms_pb2)
        print(f"reflection   v1alpha lists {len(services)} services: {', '.join(services)}")
        with step("health check"):
            check_health(channel)
        print("health       SERVING (server and sscard.kms.v1.CardKeyService)")
        with step("InjectCardKeys"):
            keys = inject(channel, kms_pb2, kms_pb2_grpc, atr)
        print(f"inject       card {CARD_IDENTIFIER} ({TEMPLATE}), ATR …{card_factor.hex().upper()}, as station GZ-01:")
        print(f"             {len(keys)} keys as TR-31 blocks, unwrapped with psec {psec.__version__} under the station key")
        for delivered in keys:
            print(check_key(delivered, types_pb2, roots, card_factor))
    print(f"OK: {len(keys)} keys unwrapped and checked independently")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("./kms-data"),
                        help="the data directory of `sscard-kms dev` (its PKI is in <dir>/pki)")
    parser.add_argument("--endpoint", default="127.0.0.1:50051", help="HOST:PORT of the server")
    parser.add_argument("--atr", default=DEFAULT_ATR, help="the card's ATR, hex (default: inject_card's)")
    parser.add_argument("--proto-dir", type=Path, default=REPO / "proto", help="the API's .proto files")
    parser.add_argument("--test-keys", type=Path, default=REPO / "dev" / "test-keys.toml",
                        help="dev's published test keys, to derive the expected card keys")
    args = parser.parse_args(argv)
    try:
        run(args)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"FAILED: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else still ends in one line, not a traceback
        print(f"FAILED: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
