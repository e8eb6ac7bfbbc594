"""Domain errors. Each has a stable `code`; app/main.py maps them to HTTP statuses in one place."""


class ServiceError(Exception):
    code = "service_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotAuthorized(ServiceError):
    code = "not_authorized"

    def __init__(self) -> None:
        super().__init__("This endpoint needs `Authorization: Bearer <ADMIN_TOKEN>`")


class ImageNotFound(ServiceError):
    code = "image_not_found"

    def __init__(self, image_id: object) -> None:
        super().__init__(f"Image {image_id} not found")


class ImageFileMissing(ServiceError):
    code = "image_file_missing"

    def __init__(self, image_id: object) -> None:
        super().__init__(f"The file of image {image_id} is missing from storage")


class EmbeddingOutdated(ServiceError):
    code = "embedding_outdated"

    def __init__(self, image_id: object, stored_model: str, current_model: str) -> None:
        super().__init__(
            f"Image {image_id} was embedded with the {stored_model!r} model, not the current "
            f"{current_model!r}; run `python -m app reembed` to bring it up to date"
        )


class FileTooLarge(ServiceError):
    code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"File exceeds the maximum upload size of {limit} bytes")


class EmptyFile(ServiceError):
    code = "empty_file"

    def __init__(self) -> None:
        super().__init__("The uploaded file is empty")


class UnsupportedImageFormat(ServiceError):
    code = "unsupported_image_format"


class InvalidImage(ServiceError):
    code = "invalid_image"


class ImageTooLarge(ServiceError):
    code = "image_too_large"


class DatabaseUnavailable(ServiceError):
    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__("The database is unavailable; retry shortly")


class SchemaMismatch(ServiceError):
    """The database schema does not match the configuration (raised at start-up only)."""

    code = "schema_mismatch"


class StorageFull(ServiceError):
    code = "storage_full"

    def __init__(self) -> None:
        super().__init__("No space left to store the image")


class StorageUnavailable(ServiceError):
    code = "storage_unavailable"

    def __init__(self) -> None:
        super().__init__("Image storage is unavailable; retry shortly")
