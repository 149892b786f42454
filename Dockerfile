# One image for every process of the order pipeline (web, workers, relay, beat, Flower).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=orderproj.settings.production

WORKDIR /app
RUN groupadd --system app && useradd --system --gid app --home-dir /app --shell /usr/sbin/nologin app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Collecting static files reads no secret and opens no connection, so the local settings do;
# the production settings would refuse to load without the secrets.
RUN DJANGO_SETTINGS_MODULE=orderproj.settings.local python manage.py collectstatic --noinput -v 0

# The code stays owned by root: the processes read it but cannot change it.
USER app
EXPOSE 8000 5555
CMD ["gunicorn", "orderproj.wsgi:application", "--bind", "0.0.0.0:8000"]
