# The image the manifests in deploy/ run (ghcr.io/ferrydr/ferry): the ferry
# binary alone, static, on distroless. It needs no shell or other tool: the
# agent reads and writes volumes through CSI and system calls, and execs
# nothing. Build it with `make image` (IMAGE=registry/ferry:tag).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ferry ./cmd/ferry

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/ferry /usr/local/bin/ferry
ENTRYPOINT ["/usr/local/bin/ferry"]
