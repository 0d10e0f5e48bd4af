"""Every API method, declared once: name, permission, gRPC method, request and response.

Each transport binds to these declarations and nothing else: REST (``kms_hsm.api``) maps a
path to a method and renders its OpenAPI document from the message names; gRPC binds the
``grpc`` full method name to the generated servicers. The ``name`` is also what the audit
trail records, and the permission is what ``Call.authorize_key`` / ``authorize_folder`` ask
for. Message names are the Yandex Cloud proto messages (the REST schemas mirror them).
"""

from __future__ import annotations

from dataclasses import dataclass

from kms_hsm.service.access import Permission

P = Permission

_KMS = "yandex.cloud.kms.v1."


@dataclass(frozen=True, slots=True)
class Method:
    """One API method."""

    name: str  # "SymmetricCrypto.Encrypt": the audit name
    permission: Permission | None  # None: a public method (below)
    request: str  # proto message name
    response: str
    grpc: str | None = None  # "/yandex.cloud.kms.v1.SymmetricCryptoService/Encrypt"
    rest: bool = True  # False: gRPC only (the REST reference has no route for it)

    @property
    def public(self) -> bool:
        """No bearer token is asked for: the work itself establishes who calls.

        IamTokenService.Create carries its credential (a token or a signed JWT) in the
        request, and sets ``Call.principal`` once it has checked it.
        """
        return self.permission is None

    @property
    def operation_id(self) -> str:
        """The REST reference's name for the method: ``SymmetricCrypto_Encrypt``."""
        return self.name.replace(".", "_")


def _kms(service: str, verb: str, permission: Permission, request: str, response: str) -> Method:
    return Method(
        f"{service}.{verb}", permission, request, response, f"/{_KMS}{service}Service/{verb}"
    )


ENCRYPT = _kms(
    "SymmetricCrypto", "Encrypt", P.ENCRYPT, "SymmetricEncryptRequest", "SymmetricEncryptResponse"
)
DECRYPT = _kms(
    "SymmetricCrypto", "Decrypt", P.DECRYPT, "SymmetricDecryptRequest", "SymmetricDecryptResponse"
)
# ReEncrypt needs DECRYPT on the source key too (asked for by the work).
RE_ENCRYPT = _kms(
    "SymmetricCrypto",
    "ReEncrypt",
    P.ENCRYPT,
    "SymmetricReEncryptRequest",
    "SymmetricReEncryptResponse",
)
GENERATE_DATA_KEY = _kms(
    "SymmetricCrypto",
    "GenerateDataKey",
    P.ENCRYPT,
    "GenerateDataKeyRequest",
    "GenerateDataKeyResponse",
)
CREATE_KEY = _kms("SymmetricKey", "Create", P.CREATE, "CreateSymmetricKeyRequest", "Operation")
GET_KEY = _kms("SymmetricKey", "Get", P.GET, "GetSymmetricKeyRequest", "SymmetricKey")
LIST_KEYS = _kms(
    "SymmetricKey", "List", P.LIST, "ListSymmetricKeysRequest", "ListSymmetricKeysResponse"
)
LIST_VERSIONS = _kms(
    "SymmetricKey",
    "ListVersions",
    P.LIST_VERSIONS,
    "ListSymmetricKeyVersionsRequest",
    "ListSymmetricKeyVersionsResponse",
)
LIST_OPERATIONS = _kms(
    "SymmetricKey",
    "ListOperations",
    P.LIST_OPERATIONS,
    "ListSymmetricKeyOperationsRequest",
    "ListSymmetricKeyOperationsResponse",
)
UPDATE_KEY = _kms("SymmetricKey", "Update", P.UPDATE, "UpdateSymmetricKeyRequest", "Operation")
DELETE_KEY = _kms("SymmetricKey", "Delete", P.DELETE, "DeleteSymmetricKeyRequest", "Operation")
ROTATE_KEY = _kms("SymmetricKey", "Rotate", P.ROTATE, "RotateSymmetricKeyRequest", "Operation")
SET_PRIMARY_VERSION = _kms(
    "SymmetricKey",
    "SetPrimaryVersion",
    P.SET_PRIMARY_VERSION,
    "SetPrimarySymmetricKeyVersionRequest",
    "Operation",
)
SCHEDULE_VERSION_DESTRUCTION = _kms(
    "SymmetricKey",
    "ScheduleVersionDestruction",
    P.SCHEDULE_VERSION_DESTRUCTION,
    "ScheduleSymmetricKeyVersionDestructionRequest",
    "Operation",
)
CANCEL_VERSION_DESTRUCTION = _kms(
    "SymmetricKey",
    "CancelVersionDestruction",
    P.CANCEL_VERSION_DESTRUCTION,
    "CancelSymmetricKeyVersionDestructionRequest",
    "Operation",
)
KEY_LIST_ACCESS_BINDINGS = _kms(
    "SymmetricKey",
    "ListAccessBindings",
    P.LIST_ACCESS_BINDINGS,
    "ListAccessBindingsRequest",
    "ListAccessBindingsResponse",
)
KEY_SET_ACCESS_BINDINGS = _kms(
    "SymmetricKey",
    "SetAccessBindings",
    P.SET_ACCESS_BINDINGS,
    "SetAccessBindingsRequest",
    "Operation",
)
KEY_UPDATE_ACCESS_BINDINGS = _kms(
    "SymmetricKey",
    "UpdateAccessBindings",
    P.UPDATE_ACCESS_BINDINGS,
    "UpdateAccessBindingsRequest",
    "Operation",
)
GET_OPERATION = Method(
    "Operation.Get",
    P.GET_OPERATION,
    "GetOperationRequest",
    "Operation",
    "/yandex.cloud.operation.OperationService/Get",
)
# Every operation is done when it is returned, so Cancel can only refuse (FAILED_PRECONDITION);
# Yandex's REST reference has no route for it.
CANCEL_OPERATION = Method(
    "Operation.Cancel",
    P.GET_OPERATION,
    "CancelOperationRequest",
    "Operation",
    "/yandex.cloud.operation.OperationService/Cancel",
    rest=False,
)
# The credential exchange of the SDKs (and REST ``POST /iam/v1/tokens``).
CREATE_IAM_TOKEN = Method(
    "IamToken.Create",
    None,
    "CreateIamTokenRequest",
    "CreateIamTokenResponse",
    "/yandex.cloud.iam.v1.IamTokenService/Create",
)


# --- Asymmetric keys: two families, each with a key service and a crypto service ---
_SIGNATURE = "asymmetricsignature."
_ENCRYPTION = "asymmetricencryption."


def _asym(
    package: str, service: str, verb: str, permission: Permission, request: str, response: str
) -> Method:
    return Method(
        f"{service}.{verb}",
        permission,
        request,
        response,
        f"/{_KMS}{package}{service}Service/{verb}",
    )


SIGN = _asym(
    _SIGNATURE,
    "AsymmetricSignatureCrypto",
    "Sign",
    P.SIGN,
    "AsymmetricSignRequest",
    "AsymmetricSignResponse",
)
SIGN_HASH = _asym(
    _SIGNATURE,
    "AsymmetricSignatureCrypto",
    "SignHash",
    P.SIGN,
    "AsymmetricSignHashRequest",
    "AsymmetricSignHashResponse",
)
SIGNATURE_PUBLIC_KEY = _asym(
    _SIGNATURE,
    "AsymmetricSignatureCrypto",
    "GetPublicKey",
    P.GET_SIGNATURE_PUBLIC_KEY,
    "AsymmetricGetPublicKeyRequest",
    "AsymmetricGetPublicKeyResponse",
)
ASYMMETRIC_DECRYPT = _asym(
    _ENCRYPTION,
    "AsymmetricEncryptionCrypto",
    "Decrypt",
    P.ASYMMETRIC_DECRYPT,
    "AsymmetricDecryptRequest",
    "AsymmetricDecryptResponse",
)
ENCRYPTION_PUBLIC_KEY = _asym(
    _ENCRYPTION,
    "AsymmetricEncryptionCrypto",
    "GetPublicKey",
    P.GET_ENCRYPTION_PUBLIC_KEY,
    "AsymmetricGetPublicKeyRequest",
    "AsymmetricGetPublicKeyResponse",
)


@dataclass(frozen=True, slots=True)
class KeyPairMethods:
    """The nine methods of one asymmetric key service (signature or encryption keys)."""

    create: Method
    get: Method
    list: Method
    update: Method
    delete: Method
    list_operations: Method
    list_access_bindings: Method
    set_access_bindings: Method
    update_access_bindings: Method

    def all(self) -> tuple[Method, ...]:
        """Every method, in declaration order."""
        return (
            self.create,
            self.get,
            self.list,
            self.update,
            self.delete,
            self.list_operations,
            self.list_access_bindings,
            self.set_access_bindings,
            self.update_access_bindings,
        )


def _key_pair_methods(package: str, kind: str) -> KeyPairMethods:
    service = f"Asymmetric{kind}Key"

    def m(verb: str, permission: Permission, request: str, response: str) -> Method:
        return _asym(package, service, verb, permission, request, response)

    return KeyPairMethods(
        create=m("Create", P.CREATE, f"Create{service}Request", "Operation"),
        get=m("Get", P.GET, f"Get{service}Request", service),
        list=m("List", P.LIST, f"List{service}sRequest", f"List{service}sResponse"),
        update=m("Update", P.UPDATE, f"Update{service}Request", "Operation"),
        delete=m("Delete", P.DELETE, f"Delete{service}Request", "Operation"),
        list_operations=m(
            "ListOperations",
            P.LIST_OPERATIONS,
            f"List{service}OperationsRequest",
            f"List{service}OperationsResponse",
        ),
        list_access_bindings=m(
            "ListAccessBindings",
            P.LIST_ACCESS_BINDINGS,
            "ListAccessBindingsRequest",
            "ListAccessBindingsResponse",
        ),
        set_access_bindings=m(
            "SetAccessBindings", P.SET_ACCESS_BINDINGS, "SetAccessBindingsRequest", "Operation"
        ),
        update_access_bindings=m(
            "UpdateAccessBindings",
            P.UPDATE_ACCESS_BINDINGS,
            "UpdateAccessBindingsRequest",
            "Operation",
        ),
    )


SIGNATURE_KEY = _key_pair_methods(_SIGNATURE, "Signature")
ENCRYPTION_KEY = _key_pair_methods(_ENCRYPTION, "Encryption")

# Folder access bindings are kms-hsm's own (Yandex keeps them in resource-manager): no gRPC.
FOLDER_LIST_ACCESS_BINDINGS = Method(
    "Folder.ListAccessBindings",
    P.LIST_ACCESS_BINDINGS,
    "ListAccessBindingsRequest",
    "ListAccessBindingsResponse",
)
FOLDER_SET_ACCESS_BINDINGS = Method(
    "Folder.SetAccessBindings", P.SET_ACCESS_BINDINGS, "SetAccessBindingsRequest", "Operation"
)
FOLDER_UPDATE_ACCESS_BINDINGS = Method(
    "Folder.UpdateAccessBindings",
    P.UPDATE_ACCESS_BINDINGS,
    "UpdateAccessBindingsRequest",
    "Operation",
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        ENCRYPT,
        DECRYPT,
        RE_ENCRYPT,
        GENERATE_DATA_KEY,
        CREATE_KEY,
        GET_KEY,
        LIST_KEYS,
        LIST_VERSIONS,
        LIST_OPERATIONS,
        UPDATE_KEY,
        DELETE_KEY,
        ROTATE_KEY,
        SET_PRIMARY_VERSION,
        SCHEDULE_VERSION_DESTRUCTION,
        CANCEL_VERSION_DESTRUCTION,
        KEY_LIST_ACCESS_BINDINGS,
        KEY_SET_ACCESS_BINDINGS,
        KEY_UPDATE_ACCESS_BINDINGS,
        GET_OPERATION,
        CANCEL_OPERATION,
        CREATE_IAM_TOKEN,
        FOLDER_LIST_ACCESS_BINDINGS,
        FOLDER_SET_ACCESS_BINDINGS,
        FOLDER_UPDATE_ACCESS_BINDINGS,
        SIGN,
        SIGN_HASH,
        SIGNATURE_PUBLIC_KEY,
        ASYMMETRIC_DECRYPT,
        ENCRYPTION_PUBLIC_KEY,
        *SIGNATURE_KEY.all(),
        *ENCRYPTION_KEY.all(),
    )
}
