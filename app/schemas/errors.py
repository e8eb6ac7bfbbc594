"""The one error body every 4xx/5xx response uses."""

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, for people")
    code: str = Field(
        description="A stable machine-readable error code", examples=["image_not_found"]
    )


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[FieldError] = Field(
        default_factory=list,
        description="One entry per invalid parameter (only for code `validation_error`)",
    )
