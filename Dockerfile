# One image for every Cartridge service; compose gives each its command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch: the default wheel index carries a CUDA build several GB larger.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md config.toml ./
COPY shared ./shared
COPY services ./services
COPY cartridge ./cartridge
RUN pip install .
# What `cartridge provision` applies (read from the working directory).
COPY deploy/rabbitmq/users.toml ./deploy/rabbitmq/
COPY deploy/postgres/roles.sql ./deploy/postgres/

# No credentials in the image: services read them from the environment at run time.
RUN useradd --create-home --uid 10001 cartridge
USER cartridge
ENV CARTRIDGE_CONFIG=/app/config.toml

CMD ["cartridge", "--help"]
