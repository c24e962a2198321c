// Package schedapi holds the wire types and routes of the peer API: how a
// peer registers for a task with the supernode, long-polls for piece
// assignments, reports piece results, heartbeats and leaves. Its only logic
// is the identity rule of a peer (peer.go), which both sides check; the
// supernode serves the API (supernode/peerapi) and pkg/schedclient calls it.
//
// All bodies are JSON. Errors are answered with a non-2xx status and an
// Error body.
package schedapi

import (
	"net/http"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Routes, in net/http ServeMux pattern syntax. {task} is a task ID (see
// pkg/taskid), {peer} a peer ID.
const (
	// RouteRegister: POST RegisterRequest -> RegisterResponse.
	RouteRegister = "POST /api/peer/v1/register"
	// RoutePieces: GET -> PiecesResponse. A long poll: it answers as soon as
	// there is at least one assignment or the task state changes, or after
	// the wait query parameter (a Go duration, at most MaxWait) with no
	// assignments. The max query parameter caps the number of assignments.
	// Each call also counts as a heartbeat of the peer.
	RoutePieces = "GET /api/peer/v1/tasks/{task}/peers/{peer}/pieces"
	// RouteWant: PUT -> 204. Changes what the peer's parked polls of the
	// task ask for (the max, want and bg query parameters, as for
	// RoutePieces): a reader wants pieces now, and the poll waiting on the
	// supernode is answered with them as soon as it can, without being
	// cancelled (an answer cancelled on its way would be lost). No parked
	// poll: nothing changes, and the next poll says it.
	RouteWant = "PUT /api/peer/v1/tasks/{task}/peers/{peer}/want"
	// RouteReport: POST ReportRequest -> 204.
	RouteReport = "POST /api/peer/v1/tasks/{task}/peers/{peer}/reports"
	// RouteLeave: DELETE -> 204. The peer no longer serves the task.
	RouteLeave = "DELETE /api/peer/v1/tasks/{task}/peers/{peer}"
	// RouteHeartbeat: POST HeartbeatRequest -> HeartbeatResponse. Keeps a
	// peer that is only seeding alive.
	RouteHeartbeat = "POST /api/peer/v1/peers/{peer}/heartbeat"
)

// Path builders for clients.
func RegisterPath() string { return "/api/peer/v1/register" }
func PiecesPath(task, peer string) string {
	return "/api/peer/v1/tasks/" + task + "/peers/" + peer + "/pieces"
}
func WantPath(task, peer string) string {
	return "/api/peer/v1/tasks/" + task + "/peers/" + peer + "/want"
}
func ReportPath(task, peer string) string {
	return "/api/peer/v1/tasks/" + task + "/peers/" + peer + "/reports"
}
func LeavePath(task, peer string) string { return "/api/peer/v1/tasks/" + task + "/peers/" + peer }
func HeartbeatPath(peer string) string   { return "/api/peer/v1/peers/" + peer + "/heartbeat" }

// HeaderPeer is the request header in which a peer names itself (its peer
// ID) on every piece request to an upload server, so that the supernode's
// CDN can tell the scheduler whose assignment a transfer it starts serves.
// It identifies, it does not authenticate.
const HeaderPeer = "X-Damselfly-Peer"

// HeaderArriving, set to "1" on a piece request to the supernode's CDN,
// asks for a piece the CDN is still receiving (an Arriving assignment): the
// CDN answers 206 at once, without Content-Length (the length is the
// Content-Range's), streams the bytes as they arrive, and ends the chunked
// body with the piece's sha256 in the TrailerPieceDigest trailer, sent
// only once the piece is published. If the CDN's read of the piece fails
// the response is cut without its trailer. A published range is served as
// usual (the trailer is then sent too). Without the header only verified
// bytes are ever served.
const HeaderArriving = "Damselfly-Arriving"

// TrailerPieceDigest is the HTTP trailer carrying the digest of a piece
// served to a HeaderArriving request.
const TrailerPieceDigest = "Damselfly-Piece-Digest"

// Limits every server and client of this API keeps.
const (
	// MaxWait is the longest a pieces long poll waits.
	MaxWait = 30 * time.Second
	// MaxAssignments is the most assignments one poll may ask for.
	MaxAssignments = 64
	// MaxBodyBytes bounds every request body.
	MaxBodyBytes = 1 << 20
)

// Peer names a peer and the address of its upload server.
type Peer struct {
	// ID is chosen by the peer: 1 to 128 characters of [A-Za-z0-9._-].
	ID string `json:"id"`
	// Addr is host:port of the peer's upload server (pkg/peer/upload).
	Addr string `json:"addr"`
	// DownloadRate is the bytes per second the peer receives pieces at
	// most (its configured download limit), or 0 when it does not know.
	// With the CDN's upload rate it tells the scheduler how many copies of
	// a piece the CDN's link can send at once at full speed.
	DownloadRate int64 `json:"downloadRate,omitempty"`
}

// RegisterRequest asks the supernode to join a task, creating it (and
// starting its one source fetch) when it is new.
type RegisterRequest struct {
	Peer Peer `json:"peer"`
	// URL is the source of the content: an http(s) URL, or a BitTorrent
	// source (pkg/btlink: a magnet link, a torrent+http(s) URL) that only
	// the supernode's CDN can fetch.
	URL string `json:"url"`
	// File is the file of a torrent (URL a magnet link or a torrent file
	// URL) to download, as the torrent lists it (ValidateFile); empty for a
	// torrent of one file. It names the task with URL. A multi-file torrent
	// without it fails, its error listing the files.
	File string `json:"file,omitempty"`
	// Header is sent to the source on the supernode's fetch of this task
	// only (for example Authorization). It is kept in memory, never logged,
	// never stored, never passed to other peers.
	Header http.Header `json:"header,omitempty"`
	// Digest, when set, is the sha256 digest of the whole content: it names
	// the task and the supernode verifies the source against it.
	Digest string `json:"digest,omitempty"`
	// Filter lists query keys ignored when deriving the task ID from URL.
	Filter []string `json:"filter,omitempty"`
	// Identifier separates tasks that share a URL.
	Identifier string `json:"identifier,omitempty"`
	// Size, when positive, is the content size the peer knows (a
	// registry's manifest or HEAD says it). The supernode does not fetch a
	// digest task from this registration's URL if that source announces
	// another size. 0 when unknown.
	Size int64 `json:"size,omitempty"`
	// Have lists pieces the peer already holds verified (after a supernode
	// restart, a peer re-registers with what it has). PieceSize must then be
	// the piece size those pieces were cut with.
	Have      *piece.Set `json:"have,omitempty"`
	PieceSize int64      `json:"pieceSize,omitempty"`
}

// TaskID derives the ID of the task r registers for (pkg/taskid.Derive):
// the supernode names the task with it and pkg/schedclient routes r with it,
// so both sides of the wire derive it from the same fields the same way.
func (r RegisterRequest) TaskID() (taskid.ID, error) {
	return taskid.Derive(taskid.Source{
		Digest: digest.Digest(r.Digest), URL: r.URL, Filter: r.Filter, Identifier: r.Identifier, File: r.File,
	})
}

// TaskState is the state of a task's source fetch on the supernode.
type TaskState string

const (
	// TaskRunning: the CDN is fetching; more pieces will be published.
	TaskRunning TaskState = "running"
	// TaskSucceeded: every piece is published and the content verified.
	TaskSucceeded TaskState = "succeeded"
	// TaskFailed: the source fetch failed; Error says why.
	TaskFailed TaskState = "failed"
)

// TaskInfo is what a peer knows of a task. Size and PieceCount are -1 while
// the size is unknown (a source that does not say its length).
type TaskInfo struct {
	TaskID     string    `json:"taskId"`
	State      TaskState `json:"state"`
	Size       int64     `json:"size"`
	PieceSize  int64     `json:"pieceSize"`
	PieceCount int       `json:"pieceCount"`
	// ContentDigest is the sha256 of the whole content, known when the
	// task was created by digest or once the CDN has fetched all of it.
	ContentDigest string `json:"contentDigest,omitempty"`
	// PiecesDigest, once the task succeeded, is piece.ListDigest of its
	// piece digests: the supernode vouches that pieces verified against
	// those digests make up the content of ContentDigest, so a peer holding
	// them need not hash the whole content again.
	PiecesDigest string `json:"piecesDigest,omitempty"`
	// Error says why a failed task failed.
	Error string `json:"error,omitempty"`
	// RetryAfter, on a failed task, says the origin is rate-limiting: the
	// supernode's CDN retries it, and peers wait this long and register
	// again instead of going to the origin themselves.
	RetryAfter time.Duration `json:"retryAfter,omitempty"`
}

// RegisterResponse answers RegisterRequest.
type RegisterResponse struct {
	TaskInfo
}

// Assignment tells a peer to fetch one piece from one other peer (or the
// supernode's CDN) and check it against Digest.
type Assignment struct {
	Piece  int   `json:"piece"`
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	// Digest is the piece's sha256 as computed by the CDN. Peers never
	// trust a digest from anyone but the supernode.
	Digest string `json:"digest"`
	// From is the peer to fetch from.
	From Peer `json:"from"`
	// FromCDN is true when From is the supernode itself.
	FromCDN bool `json:"fromCdn,omitempty"`
	// Arriving is true for a piece the CDN is still receiving from the
	// origin (cut-through; FromCDN is then true and Digest empty). The
	// peer asks the CDN for it with HeaderArriving, reads the whole body,
	// and takes the piece's digest from the TrailerPieceDigest trailer the
	// CDN sends at the end of the transfer, once it has published the
	// piece: the peer checks the bytes against that digest before it uses,
	// stores or reports them, and the digest stands for Digest from then
	// on.
	Arriving bool `json:"arriving,omitempty"`
}

// ValidAssignmentDigest checks the digest of an assignment: a sha256 piece
// digest, or empty for an Arriving assignment from the CDN (its digest
// comes at the end of the transfer).
func ValidAssignmentDigest(a Assignment) error {
	if a.Arriving && a.FromCDN && a.Digest == "" {
		return nil
	}
	return piece.ValidateDigest(digest.Digest(a.Digest))
}

// PiecesResponse answers a pieces long poll.
type PiecesResponse struct {
	TaskInfo
	Assignments []Assignment `json:"assignments,omitempty"`
}

// PieceResult reports the outcome of one assignment.
type PieceResult struct {
	Piece int `json:"piece"`
	// From is the ID of the peer the piece was fetched from.
	From string `json:"from"`
	OK   bool   `json:"ok"`
	// Reason classifies a failure (OK false); the supernode strikes From
	// by it. An empty or unknown reason counts as ReasonTransfer.
	Reason FailureReason `json:"reason,omitempty"`
	// Error says in words what went wrong ("digest mismatch", "connection
	// refused", ...), for logs only: nothing is decided on it.
	Error string `json:"error,omitempty"`
	// Bytes and Duration describe the transfer, for load accounting.
	Bytes    int64         `json:"bytes,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
}

// FailureReason classifies a failed piece transfer.
type FailureReason string

const (
	// ReasonCorrupt: the bytes served did not match the piece's digest or
	// length. The source is struck out of the task at once.
	ReasonCorrupt FailureReason = "corrupt"
	// ReasonMissing: the source answered that it does not have the range.
	// It no longer counts as a holder of the piece, and the failure counts
	// towards its strike limit.
	ReasonMissing FailureReason = "missing"
	// ReasonTransfer: the connection was refused or broke, the transfer
	// timed out, or the source answered an unexpected status. It counts
	// towards the source's strike limit.
	ReasonTransfer FailureReason = "transfer"
	// ReasonAborted: the requester gave up on its own (it was cancelled or
	// found the assignment unusable). The source is not to blame.
	ReasonAborted FailureReason = "aborted"
)

// ReportRequest carries piece results, batched.
type ReportRequest struct {
	Results []PieceResult `json:"results"`
}

// HeartbeatRequest names the tasks the peer still serves.
type HeartbeatRequest struct {
	Addr  string   `json:"addr"`
	Tasks []string `json:"tasks"`
}

// HeartbeatResponse lists the tasks the supernode does not know the peer
// in (it restarted, or the peer expired): the peer re-registers for them.
type HeartbeatResponse struct {
	Unknown []string `json:"unknown,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

// ErrorCode is a machine-readable error kind.
type ErrorCode string

const (
	CodeInvalid ErrorCode = "INVALID_ARGUMENT" // 400
	// CodeUnauthenticated: the request carries no valid cluster token
	// (pkg/clusterauth). Nothing was registered, assigned or served.
	CodeUnauthenticated ErrorCode = "UNAUTHENTICATED" // 401
	CodeTaskNotFound    ErrorCode = "TASK_NOT_FOUND"  // 404
	CodePeerNotFound    ErrorCode = "PEER_NOT_FOUND"  // 404: register again
	CodeTaskFailed      ErrorCode = "TASK_FAILED"     // 409
	CodeUnavailable     ErrorCode = "UNAVAILABLE"     // 503: try again later
	CodeInternal        ErrorCode = "INTERNAL"        // 500
)
