package stripesim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

const typeInvalidRequest = "invalid_request_error"

// apiError is the body Stripe sends under "error".
type apiError struct {
	status        int
	Type          string `json:"type"`
	Code          string `json:"code,omitempty"`
	Message       string `json:"message"`
	Param         string `json:"param,omitempty"`
	DocURL        string `json:"doc_url,omitempty"`
	RequestLogURL string `json:"request_log_url,omitempty"`
}

func writeError(w http.ResponseWriter, reqID string, e *apiError) {
	out := *e
	if out.Code != "" && out.DocURL == "" {
		out.DocURL = "https://stripe.com/docs/error-codes/" + strings.ReplaceAll(out.Code, "_", "-")
	}
	if out.status != http.StatusUnauthorized {
		out.RequestLogURL = "https://dashboard.stripe.com/test/logs/" + reqID
	}
	body, _ := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{&out})
	status := e.status
	if status == 0 {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func errRateLimit() *apiError {
	return &apiError{
		status:  http.StatusTooManyRequests,
		Type:    typeInvalidRequest,
		Code:    "rate_limit",
		Message: "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
	}
}

func errInvalid(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

func errMissing(status int, param, object, id string) *apiError {
	return &apiError{
		status:  status,
		Type:    typeInvalidRequest,
		Code:    "resource_missing",
		Param:   param,
		Message: "No such " + object + ": '" + id + "'",
	}
}
