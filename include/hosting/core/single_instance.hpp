// Services that run on one node only: what a single-instance service holds
// while it runs, and what grants it. The core runs such a service only while
// an instance_coordinator says this node holds its lease; a feature provides
// the coordinator (hosting::coordination, on PostgreSQL or a SQLite file).
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>

namespace hosting {

namespace asio = boost::asio;

// One term of a named lease, held by this node.
class instance_lease {
public:
    virtual ~instance_lease() = default;

    // The lease's name (what single_instance() was given).
    virtual const std::string& name() const noexcept = 0;

    // A number that only grows, from one holder of the lease to the next
    // (a fencing token): pass it to whatever the service writes, and have
    // that refuse a write that carries a smaller term than one it has seen,
    // so that a holder that was paused past its lease cannot overwrite its
    // successor's work.
    virtual std::uint64_t term() const noexcept = 0;

    // Requested when this node can no longer be sure it holds the lease (a
    // renewal found it taken, or none succeeded for most of its duration):
    // before the lease can pass to another node. Requested from a thread
    // of the coordinator's own, one per loss: what is registered on it
    // holds up no other lease's word, nor any renewal.
    virtual std::stop_token lost() const noexcept = 0;

    // Gives the lease up so that another node can take it at once; renewals
    // stop. Returns at once: the coordinator's thread gives it up in turn
    // (a storage that does not answer must not hold up a host's stop), and
    // before any later acquire of this node's. Never throws: a release that
    // cannot reach the storage lets the lease expire instead.
    virtual asio::awaitable<void> release() = 0;
};

// Grants leases by name, renewing them from a thread of its own (so that a
// handler blocking the host's loop cannot let one lapse unnoticed).
class instance_coordinator {
public:
    virtual ~instance_coordinator() = default;

    // Completes once this node holds `name`, with a new term; keeps trying
    // (in the background, without blocking the caller's executor) while
    // another node holds it. Cancelled with `cancel` or by the awaiting
    // coroutine's cancellation (Asio's operation_aborted).
    virtual asio::awaitable<std::shared_ptr<instance_lease>> acquire(std::string name, std::stop_token cancel) = 0;
};

// Thrown by fencing_token() outside a single-instance service.
class not_single_instance : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

// Inside the execute of a service registered with single_instance() (and in
// every coroutine it awaits): the term of the lease it runs under. The
// term is read from the coroutine's executor, so a coroutine spawned onto
// another executor does not carry it: pass the number along instead.
// Throws not_single_instance elsewhere.
asio::awaitable<std::uint64_t> fencing_token();

// The lease itself (its name, term and `lost` token), or null outside a
// single-instance service.
asio::awaitable<std::shared_ptr<const instance_lease>> current_instance_lease();

} // namespace hosting
