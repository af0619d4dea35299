# Subcenter image: Debian 12 with Swift 6.3 (supplied by the base image you choose, e.g.
# swift:6.3-bookworm) and Debian's OpenSSL, nghttp2 and protobuf-c.
FROM swift:6.3-bookworm
WORKDIR /app
COPY . .
RUN scripts/bootstrap && make build && certs/generate
EXPOSE 50051 9090
CMD [".build/release/subcenterd", "--listen", "0.0.0.0:50051"]
