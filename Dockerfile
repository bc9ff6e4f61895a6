# One image for every hookline process: the ingress, the workers and the migration step.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hookline ./hookline
COPY ingest ./ingest
COPY workers ./workers
COPY shared ./shared
COPY console ./console
RUN pip install '.[postgres]' && useradd --system --no-create-home hookline
USER hookline
ENV HOOKLINE_CONFIG=/etc/hookline/hookline.toml
EXPOSE 8080
CMD ["hookline", "serve", "--host", "0.0.0.0", "--port", "8080", "--processes", "auto"]
