# One image for every process of the order pipeline (web, workers, relay, beat, Flower).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=orderproj.settings.production

WORKDIR /app
RUN groupadd --system app && useradd --system --gid app --home-dir /app --shell /usr/sbin/nologin app
# PROMETHEUS_MULTIPROC_DIR in compose: a new volume mounted here takes this directory's owner, so `app` may write.
RUN mkdir -p /var/lib/orderpipe/metrics && chown app:app /var/lib/orderpipe/metrics

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# The production settings (whitenoise's manifest storage) must collect the files they will serve.
# Collecting opens no connection, so placeholders stand in for the secrets in this one step only.
RUN DJANGO_SECRET_KEY=collectstatic-only DJANGO_ALLOWED_HOSTS=localhost DATABASE_URL=sqlite:////tmp/none \
    CELERY_BROKER_URL=amqp://localhost// REDIS_URL=redis://localhost RABBITMQ_MANAGEMENT_URL=http://localhost \
    EVENTBUS_SEAL_KEY=collectstatic-only \
    python manage.py collectstatic --noinput -v 0

# The code stays owned by root: the processes read it but cannot change it.
USER app
EXPOSE 8000 5555
CMD ["gunicorn", "orderproj.wsgi:application", "--bind", "0.0.0.0:8000"]
