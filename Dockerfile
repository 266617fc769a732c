# The broker and broker-hook in one image. Build: docker build -t credential-broker .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /nonexistent --shell /usr/sbin/nologin broker
COPY --from=build /install /usr/local
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/credential-broker/config/config.yaml"]
